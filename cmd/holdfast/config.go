package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strings"

	"holdfast/balancer"
	"holdfast/daemon"

	"github.com/urfave/cli/v2"
)

// fileConfig is the --config file.
type fileConfig struct {
	Services []balancer.ServiceConfig `json:"services"`
}

// loadServices assembles the services from --config or from the
// per-service flags (services.go), validated the same way. Errors name the
// flag or the file and field.
func loadServices(c *cli.Context) ([]*balancer.Service, error) {
	sa := serviceArgsOf(c)
	if path := c.Path(configFlag.Name); path != "" {
		if err := sa.configConflict(); err != nil {
			return nil, err
		}
		return loadConfigFile(path)
	}
	cfgs, err := sa.serviceConfigs()
	if err != nil {
		return nil, err
	}
	if len(cfgs) == 0 {
		return nil, usagef("no service: give --service PROTO:VIP:PORT with --real ADDR:PORT, or --config FILE")
	}
	svcs := make([]*balancer.Service, 0, len(cfgs))
	for _, sc := range cfgs {
		s, err := serviceFromFlags(sc)
		if err != nil {
			return nil, err
		}
		svcs = append(svcs, s)
	}
	for i, s := range svcs {
		for _, o := range svcs[:i] {
			if o.Proto == s.Proto && o.VIP == s.VIP {
				return nil, usagef("--service %s given twice (each --service starts a new service; give all of its flags after one --service)", cfgs[i].Service)
			}
		}
	}
	if err := balancer.ValidateServices(svcs); err != nil {
		// services[i] means nothing on a command line: the flag does.
		msg := servicesIndex.ReplaceAllString(err.Error(), "")
		if strings.Contains(msg, ": the check ") {
			msg = "--check: " + msg
		}
		return nil, usagef("%s", msg)
	}
	return svcs, nil
}

// reloadServices is what a SIGHUP reloads: the --config file again. The
// per-service flags cannot change in a running process, and reading them
// again would only undo the runtime changes (real weight, add, remove): a
// HUP without --config changes nothing.
func reloadServices(c *cli.Context) func() ([]*balancer.Service, error) {
	return func() ([]*balancer.Service, error) {
		path := c.Path(configFlag.Name)
		if path == "" {
			return nil, fmt.Errorf("no --%s; %w", configFlag.Name, daemon.ErrNothingToReload)
		}
		return loadConfigFile(path)
	}
}

// realArgs undoes the split of a value at its commas: a piece that starts
// with "id=" is the cookie id of the real before it (ADDR:PORT,id=N).
func realArgs(in []string) []string {
	out := make([]string, 0, len(in))
	for _, s := range in {
		if n := len(out); n > 0 && strings.HasPrefix(s, "id=") {
			out[n-1] += "," + s
			continue
		}
		out = append(out, s)
	}
	return out
}

// servicesIndex is ValidateServices' "services[i]: " (the config file's
// words).
var servicesIndex = regexp.MustCompile(`^services\[\d+\]: `)

// serviceFromFlags builds one service given by the per-service flags.
func serviceFromFlags(sc balancer.ServiceConfig) (*balancer.Service, error) {
	// Check each flag on its own first so the message names the flag.
	if _, _, err := balancer.ParseService(sc.Service); err != nil {
		return nil, usagef("--service: %v", err)
	}
	if sc.Scheduler != "" {
		if _, err := balancer.NewScheduler(sc.Scheduler); err != nil {
			return nil, usagef("--scheduler: %v", err)
		}
	}
	if sc.Check != "" {
		if _, err := balancer.ParseCheck(sc.Check); err != nil {
			return nil, usagef("--check: %v", err)
		}
	}
	if len(sc.Reals) == 0 {
		return nil, usagef("--service %s has no --real ADDR:PORT[*WEIGHT]", sc.Service)
	}
	for _, r := range sc.Reals {
		if _, _, _, err := balancer.ParseReal(r); err != nil {
			return nil, usagef("--real: %v", err)
		}
	}
	s, err := sc.Build()
	if err != nil {
		flag := strings.SplitN(err.Error(), ":", 2)[0]
		switch {
		case strings.HasPrefix(flag, "reals"):
			// reals[i] counts the reals of this service only.
			_, msg, _ := strings.Cut(err.Error(), ": ")
			return nil, usagef("--real: %s (--service %s)", msg, sc.Service)
		case flag != "persistence" && flag != "scheduler" && flag != "service" && flag != "check":
			return nil, usagef("--service %s: %v", sc.Service, err)
		}
		return nil, usagef("--%s: %s", flag, strings.TrimPrefix(err.Error(), flag+": "))
	}
	return s, nil
}

// loadConfigFile reads and validates a --config file whole: one bad field
// rejects the file.
func loadConfigFile(path string) ([]*balancer.Service, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("--config: %v", err)
	}
	var fc fileConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fc); err != nil {
		return nil, usagef("config %s: %s", path, jsonError(data, err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, usagef("config %s: unexpected data after the top-level object", path)
	}
	if len(fc.Services) == 0 {
		return nil, usagef("config %s: no services; expected {\"services\":[{\"service\":\"tcp:VIP:PORT\",\"reals\":[\"ADDR:PORT\"]}]}", path)
	}
	svcs := make([]*balancer.Service, 0, len(fc.Services))
	for i, sc := range fc.Services {
		s, err := sc.Build()
		if err != nil {
			return nil, usagef("config %s: services[%d].%v", path, i, err)
		}
		svcs = append(svcs, s)
	}
	if err := balancer.ValidateServices(svcs); err != nil {
		return nil, usagef("config %s: %v", path, err)
	}
	return svcs, nil
}

// jsonError turns a decoder error into "line L col C: what".
func jsonError(data []byte, err error) string {
	var off int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		off = int64(len(data))
		return fmt.Sprintf("line %d: the file ends before the JSON does (expected JSON as in the README)", 1+bytes.Count(data[:off], []byte("\n")))
	}
	if off < 0 {
		msg := strings.TrimPrefix(err.Error(), "json: ")
		if strings.HasPrefix(msg, "unknown field") {
			return msg + " (expected the fields services, and in each service: service, scheduler, persistence, reals, check)"
		}
		return msg + " (expected JSON as in the README)"
	}
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	col := off - int64(bytes.LastIndexByte(data[:off], '\n'))
	if te != nil {
		// Not the decoder's Go type names: what the field should hold.
		return fmt.Sprintf("line %d col %d: %s: a JSON %s, expected %s (as in the README)", line, col, jsonField(te), te.Value, jsonWant(te))
	}
	return fmt.Sprintf("line %d col %d: %s (expected JSON as in the README)", line, col, strings.TrimPrefix(err.Error(), "json: "))
}

// jsonField names the field of a value of the wrong JSON type.
func jsonField(te *json.UnmarshalTypeError) string {
	if te.Field == "" {
		return "the file"
	}
	return te.Field
}

// jsonWant names what a field of the config file holds, for a value of
// the wrong JSON type in it.
func jsonWant(te *json.UnmarshalTypeError) string {
	if te.Field == "" {
		return `an object {"services": [...]}`
	}
	switch te.Type.Kind() {
	case reflect.Slice:
		return "a list"
	case reflect.String:
		return "a string"
	case reflect.Struct:
		return "an object"
	}
	return "a " + te.Type.Kind().String()
}
