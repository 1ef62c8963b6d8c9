package recovery

import (
	"holdfast/nat"
	"holdfast/stack"
)

// Handler connects a nat.Director to the stack's packet pump: it turns the
// Director's verdicts into the pump's actions.
//
// It is used by the pump's goroutine only (its scratch space is not shared).
type Handler struct {
	D        *nat.Director
	verdicts []nat.Verdict
}

// HandleBatch implements stack.Handler.
func (h *Handler) HandleBatch(pkts [][]byte, partial []bool, now int64, acts []stack.Action, outs [][]byte) {
	if cap(h.verdicts) < len(pkts) {
		h.verdicts = make([]nat.Verdict, len(pkts))
	}
	vs := h.verdicts[:len(pkts)]
	h.D.HandleBatch(pkts, partial, now, vs, outs)
	for i, v := range vs {
		switch v {
		case nat.Forward:
			acts[i] = stack.Write
		case nat.Reset:
			acts[i] = stack.WriteNew
		case nat.ToStack:
			acts[i] = stack.ToStack
		default:
			acts[i] = stack.Nothing
		}
	}
}
