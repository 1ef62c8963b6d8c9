package daemon

import (
	"context"

	"github.com/rs/zerolog"
)

// stages are the daemon's parts that run: goroutines it starts, and
// components that run goroutines of their own (the netstack, the recovery
// engine, the health checker, the HTTP servers). Each has a name and an
// owner, the daemon, that stops it: in the reverse order of their start,
// so that nothing is stopped while something started after it (and
// possibly using it) still runs. Each logs "started" and "stopped", as
// wireguard-go's routines do (debug level).
type stages struct {
	log  zerolog.Logger
	list []stage
	// ended receives the stage that returned on its own (not stopped):
	// the daemon stops then, with the stage's error.
	ended chan stageEnd
}

type stage struct {
	name string
	stop func() // ends the stage and waits until it has
}

type stageEnd struct {
	part Part
	err  error
}

func newStages(log zerolog.Logger) *stages {
	return &stages{log: log, ended: make(chan stageEnd, 1)}
}

// own registers a component already started, with the function that stops
// it and waits for its goroutines.
func (s *stages) own(name string, stop func()) {
	s.log.Debug().Str(fStage, name).Msg(name + " started")
	s.list = append(s.list, stage{name, stop})
}

// run starts fn on a goroutine as the stage part. Stopping it cancels fn's
// ctx, calls interrupt (if not nil; for a loop that does not watch ctx, such
// as a read on the device), and waits for fn to return. If fn returns
// before it is stopped, the daemon stops with fn's error (nil included: a
// part that ends on its own ends the daemon).
func (s *stages) run(ctx context.Context, part Part, fn func(ctx context.Context) error, interrupt func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	name := string(part)
	go func() {
		defer close(done)
		err := fn(ctx)
		if ctx.Err() != nil {
			return // stopped
		}
		if err != nil {
			s.log.Error().Err(err).Str(fStage, name).Msg(name + " failed")
		}
		select {
		case s.ended <- stageEnd{part, err}:
		default: // another stage ended first: the daemon is stopping already
		}
	}()
	s.own(name, func() {
		cancel()
		if interrupt != nil {
			interrupt()
		}
		<-done
	})
}

// stopAll stops every stage, the last started first.
func (s *stages) stopAll() {
	for i := len(s.list) - 1; i >= 0; i-- {
		st := s.list[i]
		st.stop()
		s.log.Debug().Str(fStage, st.name).Msg(st.name + " stopped")
	}
	s.list = nil
}
