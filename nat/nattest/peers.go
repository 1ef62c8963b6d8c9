package nattest

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Peers stands for the hosts a Director's own packets (its Config.Emit)
// reach, for tests of what comes after the miss path. Unless Quiet, it
// answers them as Linux hosts do when the connection's real died: an owner
// probe (a pure ACK to a real) with the real's no-socket reset (RST, seq =
// the probe's ack); a challenge (a pure ACK from a VIP) with the client's
// duplicate ACK, its SND.NXT 64 KiB past the challenge's ack (the trigger's
// seq: the client sent more since) and its RCV.NXT the trigger's ack (the
// challenge's seq + 2^30). The answers go to Handle at once, with the time
// the Director emitted at. Everything else
// emitted is kept in Out; the probes and challenges seen in Probes and
// Challenges.
type Peers struct {
	Handle     func(pkt []byte, now int64)
	VIPs       map[netip.Addr]bool
	Reals      map[netip.Addr]bool
	Quiet      bool
	Out        [][]byte
	Probes     [][]byte
	Challenges [][]byte
}

// Emit is the Director's Config.Emit.
func (pr *Peers) Emit(pkts [][]byte, now int64) {
	for _, b := range pkts {
		b = append([]byte(nil), b...)
		ip := header.IPv4(b)
		if len(b) < header.IPv4MinimumSize || ip.Protocol() != uint8(header.TCPProtocolNumber) {
			pr.Out = append(pr.Out, b)
			continue
		}
		src := netip.AddrFrom4(ip.SourceAddress().As4())
		dst := netip.AddrFrom4(ip.DestinationAddress().As4())
		t := header.TCP(ip.Payload())
		pure := len(t.Payload()) == 0 && t.Flags() == header.TCPFlagAck
		from := netip.AddrPortFrom(src, t.SourcePort()).String()
		to := netip.AddrPortFrom(dst, t.DestinationPort()).String()
		switch {
		case pure && pr.VIPs[src]:
			pr.Challenges = append(pr.Challenges, b)
			if !pr.Quiet {
				pr.Handle(TCP4(to, from, header.TCPFlagAck, t.AckNumber()+1<<16, t.SequenceNumber()+1<<30, nil), now)
			}
		case pure && pr.Reals[dst]:
			pr.Probes = append(pr.Probes, b)
			if !pr.Quiet {
				pr.Handle(TCP4(to, from, header.TCPFlagRst, t.AckNumber(), 0, nil), now)
			}
		default:
			pr.Out = append(pr.Out, b)
		}
	}
}
