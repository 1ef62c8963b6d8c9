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
		if len(b) < header.IPv4MinimumSize {
			pr.Out = append(pr.Out, b)
			continue
		}
		proto, l4, _ := Layers(b)
		if proto != uint8(header.TCPProtocolNumber) || len(l4) < header.TCPMinimumSize {
			pr.Out = append(pr.Out, b)
			continue
		}
		var src, dst netip.Addr
		if header.IPVersion(b) == header.IPv6Version {
			src, dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		} else {
			src, dst = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		}
		t := header.TCP(l4)
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
