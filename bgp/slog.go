package bgp

import (
	"context"
	"log/slog"

	"github.com/rs/zerolog"
)

// slogToZerolog returns a slog.Logger for GoBGP that writes to log, as the
// rest of holdfast logs. GoBGP logs every FSM step at Info and Debug; the
// speaker logs the state changes itself (onPeer), so GoBGP's own lines are
// kept from Warn up.
func slogToZerolog(log zerolog.Logger) *slog.Logger {
	return slog.New(&zerologHandler{log: log.With().Str("component", "gobgp").Logger()})
}

type zerologHandler struct {
	log   zerolog.Logger
	attrs []slog.Attr
	group string
}

func (h *zerologHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *zerologHandler) Handle(_ context.Context, r slog.Record) error {
	ev := h.log.Warn()
	if r.Level >= slog.LevelError {
		ev = h.log.Error()
	}
	add := func(a slog.Attr) bool {
		if a.Key != "" {
			k := a.Key
			if h.group != "" {
				k = h.group + "." + k
			}
			ev = ev.Str(k, a.Value.Resolve().String())
		}
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	ev.Msg(r.Message)
	return nil
}

func (h *zerologHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	n.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &n
}

func (h *zerologHandler) WithGroup(name string) slog.Handler {
	n := *h
	if n.group != "" {
		name = n.group + "." + name
	}
	n.group = name
	return &n
}
