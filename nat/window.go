package nat

import (
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Window tracking (DESIGN.md section 6): the idea of conntrack's
// tcp_in_window (Guido van Rooij's algorithm, net/netfilter/nf_conntrack_proto_tcp.c)
// with RFC 5961's threat model. An off-path attacker knows a flow's 4-tuple
// but not its sequence numbers; a segment outside what the two ends could
// have sent changes no flow state (no FIN or RST transition, no move of the
// stale mark, no stale verdict, no expiry refresh). It is still forwarded
// with the flow's rewrite, so that the endpoint answers it with its own
// challenge ACK, and counted (Stats.OutOfWindow).
//
// Both directions are tracked in the client's sequence spaces: a client
// segment as it arrives, a real's after a recovered flow's translation. A
// direction never seen is simply not checked (a director may see only one
// direction of a flow), and the first segment of a direction is checked
// only against the other direction, then learned.
//
// Window scale. When the director saw both SYNs (clientHandshake known) the
// scales are exact. A flow picked up mid-stream (adopted, recovered after a
// failover, a plain flow made from a mid-stream segment with recovery off)
// has an unknown scale: the window fields are taken at the largest scale,
// 14 (conntrack marks such flows "be liberal" and checks nothing). That
// lets through a seq up to w<<14 above the receiver's highest ack and as
// far below the sender's highest end, w the largest window field the
// receiver advertised: at w = 65535 (2^30 bytes each way) a random seq
// passes about one time in four on each side, one in two in all; at the
// 502 Linux usually advertises, about one in 260. Such flows rely on "no
// state change without proof" more than on the window check: a
// stale verdict needs the real's own no-socket reset, and a RST must hit
// the narrow range where the receiver's RCV.NXT can be.

const (
	maxWScale = 14 // RFC 7323 section 2.3
	// liberalWin is the largest window there is: what an unseen side may
	// have advertised.
	liberalWin = 0xffff << maxWScale
	// minAckWin is conntrack's MAXACKWINDOW floor: an ACK may lag this far
	// behind whatever the window says (and a retransmission be this old).
	minAckWin = 66000
)

// dirWin is one direction of a TCP flow as the director saw it.
type dirWin struct {
	end    uint32 // the sequence after the highest segment sent (conntrack td_end)
	ack    uint32 // the highest ack sent (valid with winAcked)
	maxWin uint32 // the largest window advertised, in bytes (conntrack td_maxwin)
}

// winFlags are the flow's window-tracking bits.
type winFlags uint8

const (
	winCliSeen   winFlags = 1 << iota // a client segment was learned
	winCliAcked                       // cli.ack is valid
	winSrvSeen                        // a real's segment was learned
	winSrvAcked                       // srv.ack is valid
	winSuspect                        // stale suspect: the client acked server bytes this director never carried
	winHandshake                      // a flow made by a SYN here, whose client has not yet acked the real's SYN-ACK
)

// tcpWin is a flow's window state (24 bytes of directions, the suspect's
// ack and the flags).
type tcpWin struct {
	cli, srv   dirWin
	suspectAck uint32 // the ack (client space) of the last segment that made the flow suspect
	flags      winFlags
}

// winVerdict is what the window check says of a segment.
type winVerdict uint8

const (
	winOK         winVerdict = iota // in window: the flow's state follows it
	winOut                          // out of window: forwarded, no state change
	winSuspectAck                   // a client ACK beyond the stale mark: forwarded, the flow marked suspect
	winStaleReset                   // the real's no-socket reset confirming a suspect: the flow is stale
	winStale                        // a client segment in window whose ack passes the stale mark: the flow is stale
)

// seg is a segment's numbers in the client's spaces.
type seg struct {
	seq, end, ack uint32
	win           uint32 // the window in bytes, as the receiver applies it
	flags         header.TCPFlags
}

func (s *seg) hasAck() bool { return s.flags&header.TCPFlagAck != 0 }

// liberal reports whether f was picked up mid-stream (unknown window scale).
func (f *flow) liberal() bool { return !f.hs.known }

// ackSlack is how far an ack (or a SACK edge) may pass the bytes the
// director saw the other side send: nothing when the director saw the
// connection from its SYN; on a flow picked up mid-stream, the dead
// director may have carried up to a window more (the receiver's window:
// the sender of those bytes could not have more in flight). Both are
// taken as the largest window either side advertised.
func (f *flow) ackSlack() uint32 {
	if !f.liberal() {
		return 0
	}
	return max(f.win.cli.maxWin, f.win.srv.maxWin, minAckWin)
}

// segOf reads into s p's numbers in the client's spaces: a real's segment is
// translated (and its window rescaled) as toClient will do it.
func (f *flow) segOf(p *packet, fromClient bool, s *seg) {
	*s = seg{seq: p.seq, end: segEnd(p), ack: p.ack, flags: p.flags}
	w := header.TCP(p.l4).WindowSize()
	if !fromClient && f.Kind == KindRecovered {
		s.seq += f.AckDelta
		s.end += f.AckDelta
		s.ack += f.SeqDelta
		if f.winToClient.active() && p.flags&header.TCPFlagSyn == 0 {
			w = f.winToClient.rescale(w)
		}
	}
	var sh uint8
	switch {
	case p.flags&header.TCPFlagSyn != 0:
		// RFC 7323: the window of a SYN is never scaled.
	case !f.hs.known && !fromClient && f.Kind == KindRecovered && f.winToClient.in >= 0 && !f.winToClient.active():
		// A recovered flow knows the real's shift: it answered the
		// director's own SYN. So the client's segments are checked
		// against the real's true window, not the largest one: a blind
		// seq passes about once in 2^32/window rather than once in four.
		sh = uint8(min(f.winToClient.in, maxWScale))
	case !f.hs.known:
		sh = maxWScale
	case fromClient:
		sh = uint8(min(max(f.hs.ws, 0), maxWScale))
	default:
		sh = uint8(min(max(f.hs.view, 0), maxWScale))
	}
	s.win = uint32(w) << sh
}

// sides returns the sender's and the receiver's direction and flags.
func (w *tcpWin) sides(fromClient bool) (s, r *dirWin, sSeen, sAcked, rSeen, rAcked bool) {
	if fromClient {
		return &w.cli, &w.srv, w.flags&winCliSeen != 0, w.flags&winCliAcked != 0, w.flags&winSrvSeen != 0, w.flags&winSrvAcked != 0
	}
	return &w.srv, &w.cli, w.flags&winSrvSeen != 0, w.flags&winSrvAcked != 0, w.flags&winCliSeen != 0, w.flags&winCliAcked != 0
}

// checkWindow classifies a TCP segment of f and fills sg with its numbers
// in the client's spaces. It changes nothing.
func (f *flow) checkWindow(p *packet, fromClient bool, sg *seg) winVerdict {
	f.segOf(p, fromClient, sg)
	return f.classify(sg, fromClient)
}

func (f *flow) classify(sg *seg, fromClient bool) winVerdict {
	w := &f.win
	s, r, sSeen, _, rSeen, rAcked := w.sides(fromClient)

	if fromClient && w.flags&(winHandshake|winCliSeen) == winHandshake|winCliSeen && sg.flags&header.TCPFlagSyn == 0 && sg.seq != w.cli.end {
		// Until the client completes the handshake of a SYN seen here,
		// its next segment starts at the byte after its SYN: anything
		// else (a forged segment) must not move the client's side, which
		// the real's SYN-ACK is checked against.
		return winOut
	}
	if !fromClient && w.flags&winSuspect != 0 && sg.flags&(header.TCPFlagRst|header.TCPFlagAck) == header.TCPFlagRst && sg.seq == w.suspectAck {
		// Linux's tcp_v4_send_reset with no socket answers a segment
		// carrying an ACK with a bare RST at seq = that ack: the real has
		// no connection for the tuple. An off-path attacker cannot make a
		// live real say that.
		return winStaleReset
	}
	if fromClient && sg.hasAck() && w.flags&winSrvSeen != 0 {
		if f.marked && seqAfter(sg.ack, f.hiSrv) {
			// The client acknowledges server bytes this director never
			// carried: a forged ack, or a connection that moved on
			// through another director (failback without sync). A
			// segment whose seq is in the window as well is taken as
			// the client's own: the flow is stale at once, as before
			// window tracking (a blind attacker must guess the seq:
			// one time in 2^32/window, about 1 in 500 for a flow seen
			// from its SYN with a 8 MiB window, 1 in 4 for one picked
			// up mid-stream, whose scale is unknown). Any other such
			// segment only makes the flow suspect, and the real's own
			// no-socket reset proves it stale (see track). The proof
			// an attacker cannot forge at all, a challenge to the
			// client, comes with the challenge before recovery.
			// A director that never saw the real's side (replies
			// through another one) cannot know what was carried and
			// does not judge.
			if sg.flags&(header.TCPFlagSyn|header.TCPFlagRst) == 0 && f.seqInWindow(sg, fromClient) {
				return winStale // a SYN or a RST proves nothing of the kind
			}
			return winSuspectAck
		}
		if !f.marked && seqAfter(sg.ack, w.srv.end+f.ackSlack()) {
			// The first ack sets the mark: it may pass what crossed
			// here only on a flow picked up mid-stream, by a window.
			return winOut
		}
	}
	if sg.flags&header.TCPFlagRst != 0 {
		if rstInWindow(s, r, sSeen, rAcked, sg.seq) {
			return winOK
		}
		return winOut
	}
	if sg.flags&header.TCPFlagSyn != 0 && sg.flags&header.TCPFlagAck != 0 && !fromClient && f.State == StateSynRecv && w.flags&winCliSeen != 0 {
		// A SYN-ACK answers the client's SYN exactly.
		if sg.ack != w.cli.end {
			return winOut
		}
		return winOK
	}
	if !f.seqInWindow(sg, fromClient) {
		return winOut
	}
	if sg.hasAck() && rSeen {
		// An ack lags what the receiver sent by at most the sender's own
		// window (what it lets the receiver have in flight).
		sWin := s.maxWin
		if !sSeen {
			sWin = liberalWin
		}
		if seqAfter(r.end-max(sWin, minAckWin), sg.ack) {
			return winOut
		}
		// A real never acks client bytes that did not cross, except on a
		// flow picked up mid-stream: the dead director may have carried
		// up to a window of them. (A client's ack beyond is the stale
		// test above.)
		if !fromClient && seqAfter(sg.ack, r.end+f.ackSlack()) {
			return winOut
		}
	}
	return winOK
}

// seqInWindow reports whether sg's sequence range fits the receiver's
// window: not beyond its highest ack plus its largest window (conntrack's
// td_maxend), and not older than a window behind the sender's highest end
// (a retransmission).
func (f *flow) seqInWindow(sg *seg, fromClient bool) bool {
	s, r, sSeen, _, rSeen, rAcked := f.win.sides(fromClient)
	rWin := r.maxWin
	if !rSeen {
		rWin = liberalWin
	}
	if rAcked && seqAfter(sg.seq, r.ack+rWin) {
		return false
	}
	return !sSeen || !seqAfter(s.end-max(rWin, minAckWin), sg.end)
}

// rstInWindow is the RST rule. RFC 5961 section 3.2 accepts a RST whose seq
// is exactly the receiver's RCV.NXT (and answers one elsewhere in the window
// with a challenge ACK); conntrack accepts any in-window RST. The director
// does not know RCV.NXT exactly, but knows where it lies: at or after the
// receiver's highest ack and at or before the sender's highest end. A RST
// changes the flow's state only if its seq is in that range (bytes in flight
// wide: a blind RST hits it with a probability of that over 2^32). Where
// only one end of the range is known (half a flow, a flow picked up
// mid-stream), the seq must be that end exactly: a Linux RST carries
// SND.NXT (active reset) or the ack it answers (no socket).
func rstInWindow(s, r *dirWin, sSeen, rAcked bool, seq uint32) bool {
	switch {
	case sSeen && rAcked:
		lo, hi := r.ack, s.end
		if seqAfter(lo, hi) {
			lo, hi = hi, lo // the receiver acked bytes the director did not see
		}
		return !seqAfter(lo, seq) && !seqAfter(seq, hi)
	case sSeen:
		return seq == s.end
	case rAcked:
		return seq == r.ack
	}
	return false
}

// learn updates the sender's direction from an in-window segment (or the
// first one of a direction).
func (w *tcpWin) learn(sg *seg, fromClient bool) {
	s, _, sSeen, sAcked, _, _ := w.sides(fromClient)
	seen, acked := winCliSeen, winCliAcked
	if !fromClient {
		seen, acked = winSrvSeen, winSrvAcked
	}
	if !sSeen || seqAfter(sg.end, s.end) {
		s.end = sg.end
	}
	if sg.hasAck() && (!sAcked || seqAfter(sg.ack, s.ack)) {
		s.ack = sg.ack
		w.flags |= acked
	}
	if sg.win > s.maxWin {
		s.maxWin = sg.win
	}
	w.flags |= seen
}

// resync takes the real's answer to a suspect flow as the truth for its
// direction: its seq and ack are what the real holds.
func (w *tcpWin) resync(sg *seg) {
	w.srv.end = sg.end
	if sg.hasAck() {
		w.srv.ack = sg.ack
		w.flags |= winSrvAcked
	}
	w.srv.maxWin = max(w.srv.maxWin, sg.win)
	w.flags |= winSrvSeen
	w.flags &^= winSuspect
}
