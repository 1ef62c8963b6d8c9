package main

import (
	"flag"
	"strings"

	"holdfast/balancer"

	"github.com/urfave/cli/v2"
)

// The per-service flags of `holdfast run` (--service, --scheduler, --real,
// --persistence, --check) are read in argument order, as ipvsadm users
// expect: each --service owns the per-service flags that follow it, until
// the next --service. urfave/cli keeps no order between different flags,
// so the five flags share one serviceArgs through their flag.Value: Go's
// flag package calls Set in argument order.
//
// Environment variables have no order: they describe one service only, and
// are refused next to several --service flags and next to --config.

// serviceArg is one per-service flag as given on the command line.
type serviceArg struct{ flag, value string }

// serviceArgs records the per-service flags of one parse of the run
// command: the command line's in order, the environment's by flag name.
// One serviceArgs belongs to one set of run flags (runFlags makes a fresh
// one); it is written while urfave/cli parses and only read after.
type serviceArgs struct {
	set  *flag.FlagSet // the flag set being parsed: Sets before its Parse come from the environment
	args []serviceArg
	env  map[string]string // flag name -> value of its HOLDFAST_* variable
}

// serviceValue is the flag.Value of one per-service flag.
type serviceValue struct {
	sa   *serviceArgs
	name string
}

func (v *serviceValue) Set(s string) error {
	if v.sa.set == nil || !v.sa.set.Parsed() {
		// urfave/cli sets a flag from its variable in Apply, before
		// it parses the arguments.
		v.sa.env[v.name] = s
		return nil
	}
	v.sa.args = append(v.sa.args, serviceArg{v.name, s})
	return nil
}

func (v *serviceValue) String() string { return "" }

// serviceFlag is a per-service flag: a GenericFlag that tells its
// serviceArgs which flag set it is applied to.
type serviceFlag struct {
	*cli.GenericFlag
	sa *serviceArgs
}

func (f *serviceFlag) Apply(set *flag.FlagSet) error {
	f.sa.set = set
	return f.GenericFlag.Apply(set)
}

// serviceArgsOf returns the serviceArgs of c's run flags.
func serviceArgsOf(c *cli.Context) *serviceArgs {
	if v, ok := c.Generic(serviceFlagName).(*serviceValue); ok {
		return v.sa
	}
	return &serviceArgs{env: map[string]string{}}
}

// perServiceOrder is the per-service flags in the order messages list them.
var perServiceOrder = []string{serviceFlagName, schedulerFlagName, realFlagName, persistenceFlagName, checkFlagName}

// envName is the variable of a per-service flag.
func envName(flag string) string { return envPrefix + strings.ToUpper(flag) }

// firstEnv returns the first per-service variable set, in perServiceOrder.
func (sa *serviceArgs) firstEnv() (name string, ok bool) {
	for _, f := range perServiceOrder {
		if _, ok := sa.env[f]; ok {
			return f, true
		}
	}
	return "", false
}

// serviceConfigs groups the per-service flags into one ServiceConfig per
// service. With one --service (or none, and HOLDFAST_SERVICE) every
// per-service flag belongs to it wherever it stands, as before several
// services could be given, and a variable fills in what the command line
// leaves out. With several, a per-service flag belongs to the --service
// before it and no variable may be set. Errors name the flag and its value.
func (sa *serviceArgs) serviceConfigs() ([]balancer.ServiceConfig, error) {
	n := 0
	for _, a := range sa.args {
		if a.flag == serviceFlagName {
			n++
		}
	}
	if n > 1 {
		if f, ok := sa.firstEnv(); ok {
			return nil, usagef("%s is set and %d --service flags are given: environment variables have no order, so they can describe one service only (unset it, or give that service's --%s on the command line)", envName(f), n, f)
		}
		var out []serviceGroup
		for _, a := range sa.args {
			if a.flag == serviceFlagName {
				out = append(out, serviceGroup{service: a.value})
				continue
			}
			if len(out) == 0 {
				return nil, usagef("--%s %s before any --service (with several services, each --service comes first and owns the flags after it)", a.flag, a.value)
			}
			if err := out[len(out)-1].add(a); err != nil {
				return nil, err
			}
		}
		cfgs := make([]balancer.ServiceConfig, len(out))
		for i, g := range out {
			cfgs[i] = g.config()
		}
		return cfgs, nil
	}
	if len(sa.args) == 0 && len(sa.env) == 0 {
		return nil, nil
	}
	// One service: the command line's flags in any order, then the
	// variables for the flags it does not give.
	var g serviceGroup
	for _, a := range sa.args {
		if a.flag == serviceFlagName {
			g.service = a.value
			continue
		}
		if err := g.add(a); err != nil {
			return nil, err
		}
	}
	if v, ok := sa.env[serviceFlagName]; ok && n == 0 {
		g.service = v
	}
	for _, f := range perServiceOrder[1:] {
		v, ok := sa.env[f]
		if !ok || g.given(f) {
			continue
		}
		if err := g.add(serviceArg{f, v}); err != nil {
			return nil, err
		}
	}
	if g.service == "" {
		if len(sa.args) == 0 {
			f, _ := sa.firstEnv()
			return nil, usagef("%s given without --service PROTO:VIP:PORT", envName(f))
		}
		return nil, usagef("--%s given without --service PROTO:VIP:PORT", sa.args[0].flag)
	}
	return []balancer.ServiceConfig{g.config()}, nil
}

// serviceGroup is one service's flags.
type serviceGroup struct {
	service                       string
	scheduler, persistence, check *string
	reals                         []string
}

// add gives a per-service flag other than --service to g. A scheduler,
// persistence or check given twice for one service is refused: which one
// was meant cannot be told.
func (g *serviceGroup) add(a serviceArg) error {
	var p **string
	switch a.flag {
	case realFlagName:
		// As urfave/cli's slice flags did: a value may hold several
		// reals separated by commas (ADDR:PORT,id=N stays one).
		g.reals = append(g.reals, realArgs(strings.Split(a.value, ","))...)
		return nil
	case schedulerFlagName:
		p = &g.scheduler
	case persistenceFlagName:
		p = &g.persistence
	case checkFlagName:
		p = &g.check
	}
	if *p != nil {
		what := "the --service"
		if g.service != "" {
			what = "--service " + g.service
		}
		return usagef("--%s %s: %s already has --%s %s (one per service)", a.flag, a.value, what, a.flag, **p)
	}
	v := a.value
	*p = &v
	return nil
}

func (g *serviceGroup) given(flag string) bool {
	switch flag {
	case realFlagName:
		return len(g.reals) > 0
	case schedulerFlagName:
		return g.scheduler != nil
	case persistenceFlagName:
		return g.persistence != nil
	case checkFlagName:
		return g.check != nil
	}
	return false
}

func (g *serviceGroup) config() balancer.ServiceConfig {
	deref := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	return balancer.ServiceConfig{Service: g.service, Scheduler: deref(g.scheduler),
		Persistence: deref(g.persistence), Check: deref(g.check), Reals: g.reals}
}

// configConflict returns the first per-service flag or variable given
// next to --config, which describes every service itself.
func (sa *serviceArgs) configConflict() error {
	if len(sa.args) > 0 {
		a := sa.args[0]
		return usagef("--%s %s: per-service flags cannot be combined with --config (put the service in the config file)", a.flag, a.value)
	}
	if f, ok := sa.firstEnv(); ok {
		return usagef("%s is set: per-service variables cannot be combined with --config (unset it, and put the service in the config file)", envName(f))
	}
	return nil
}
