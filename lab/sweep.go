package lab

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// List returns the names of the namespaces (`ip netns list`) starting with
// prefix.
func List(prefix string) ([]string, error) {
	out, err := run("ip", "netns", "list")
	if err != nil {
		return nil, err
	}
	var names []string
	for line := range strings.Lines(string(out)) {
		// Lines read "NAME" or "NAME (id: N)".
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			names = append(names, f[0])
		}
	}
	return names, nil
}

// SweepStale deletes namespaces left by labs whose process is gone (a test
// binary killed before its cleanup ran): those named with the default prefix
// "hf<pid>-<n>-" where no process <pid> exists. It returns the deleted names.
func SweepStale() ([]string, error) {
	names, err := List("hf")
	if err != nil {
		return nil, err
	}
	var deleted []string
	var errs []error
	for _, name := range names {
		m := stalePrefix.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid <= 0 {
			continue
		}
		if alive(pid) {
			continue
		}
		if _, err := run("ip", "netns", "delete", name); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, name)
	}
	return deleted, errors.Join(errs...)
}

// Remove deletes the namespaces whose names start with prefix, after
// killing (SIGKILL, by PID) the processes still in them: the cleanup of a
// lab whose owner is gone (a killed `holdfast lab up`, see
// SupervisedPrefix). It keeps going past errors and returns the names it
// deleted and the errors.
func Remove(prefix string) ([]string, error) {
	if prefix == "" {
		return nil, errors.New("lab: Remove with an empty prefix would remove every namespace")
	}
	names, err := List(prefix)
	if err != nil {
		return nil, err
	}
	var deleted []string
	var errs []error
	for _, name := range names {
		out, err := run("ip", "netns", "pids", name)
		if err != nil {
			errs = append(errs, err)
		}
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck // a process of the lab's namespaces
			}
		}
		if _, err := run("ip", "netns", "delete", name); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, name)
	}
	return deleted, errors.Join(errs...)
}

// alive reports whether process pid exists and is not a zombie (a killed
// test binary whose parent has not reaped it yet is gone all the same).
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true // cannot tell: leave its namespaces alone
	}
	// "pid (comm) S ...": the state follows the last ')'.
	if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}
