package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"holdfast/lab"
)

// holdfastBin is the director under test, built once by TestMain; if the
// build failed, buildErr says why and the tests that need it fail with that.
var (
	holdfastBin string
	buildErr    error
)

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		// Namespaces of an earlier run that was killed before its cleanup.
		if gone, err := lab.SweepStale(); err != nil || len(gone) > 0 {
			fmt.Fprintf(os.Stderr, "integration: removed stale namespaces %v (errors: %v)\n", gone, err)
		}
	}
	dir, err := os.MkdirTemp("", "holdfast-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	holdfastBin, buildErr = buildHoldfast(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildHoldfast builds ./cmd/holdfast from the module root (the parent of
// this package) into dir. Under `go test -race` the director is built with
// -race too, so a data race in it fails the test that saw it (the binary then
// exits 66, and StartDirector's cleanup wants 0).
func buildHoldfast(dir string) (string, error) {
	return goBuild(filepath.Join(dir, "holdfast"), raceEnabled)
}

// plainBin is holdfast built without -race whatever the test binary is, for
// the tests that measure the director's packet rate against the kernel's
// (the race detector slows every packet several times); built on first use.
var (
	plainOnce sync.Once
	plainBin  string
	plainErr  error
)

// holdfastPlainBinary returns plainBin, building it the first time.
func holdfastPlainBinary(t testing.TB) string {
	t.Helper()
	if !raceEnabled {
		return holdfastBinary(t)
	}
	plainOnce.Do(func() { plainBin, plainErr = goBuild(holdfastBin+"-norace", false) })
	if plainErr != nil {
		t.Fatalf("building holdfast without -race: %v", plainErr)
	}
	return plainBin
}

// goBuild builds ./cmd/holdfast into bin, with -race if race.
func goBuild(bin string, race bool) (string, error) {
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/holdfast")
	cmd := exec.Command("go", args...)
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %v: %v\n%s", args, err, out)
	}
	return bin, nil
}
