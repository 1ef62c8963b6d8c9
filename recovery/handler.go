package recovery

import (
	"holdfast/nat"
	"holdfast/stack"
)

// Handler connects a nat.Director to the stack's packet pump: it turns the
// Director's verdicts into the pump's actions.
type Handler struct{ D *nat.Director }

// HandlePacket implements stack.Handler.
func (h Handler) HandlePacket(pkt []byte, partial bool, now int64) (stack.Action, []byte) {
	v, out := h.D.Handle(pkt, partial, now)
	switch v {
	case nat.Forward:
		return stack.Write, out
	case nat.Reset:
		return stack.WriteNew, out
	case nat.ToStack:
		return stack.ToStack, nil
	}
	return stack.Nothing, nil
}
