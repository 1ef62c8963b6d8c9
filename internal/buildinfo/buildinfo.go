// Package buildinfo says which build of holdfast this is, as the Go
// toolchain recorded it (module version, VCS revision): for --version, the
// holdfast_build_info metric and the admin API.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Info is what the build recorded.
type Info struct {
	Version   string // the main module's version ("(devel)" for a local build)
	Revision  string // the VCS revision, "" if none was recorded
	Modified  bool   // the work tree had changes
	GoVersion string
}

// Read returns the build's Info.
func Read() Info {
	in := Info{Version: "unknown", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return in
	}
	in.Version = bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Revision = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	return in
}

// String is the version, revision and "(modified)" in one line.
func (in Info) String() string {
	s := in.Version
	if in.Revision != "" {
		s += " " + in.Revision
	}
	if in.Modified {
		s += " (modified)"
	}
	return s
}
