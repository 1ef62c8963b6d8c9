package buildinfo

import (
	"runtime"
	"strings"
	"testing"
)

// A test binary has build info: the Go version is this toolchain's, and the
// line starts with the module's version.
func TestRead(t *testing.T) {
	in := Read()
	if in.GoVersion != runtime.Version() || in.Version == "" || !strings.HasPrefix(in.String(), in.Version) {
		t.Fatalf("%+v: %q", in, in.String())
	}
	if (Info{Version: "v1", Revision: "abc", Modified: true}).String() != "v1 abc (modified)" {
		t.Fatal("String")
	}
}
