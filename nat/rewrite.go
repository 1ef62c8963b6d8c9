package nat

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Rewrites update every checksum incrementally (RFC 1624). Addresses and
// ports go through gVisor's *WithChecksumUpdate setters; the words gVisor has
// no setter for go through put16 and put32, hence csumReplace16: a recovered
// flow's sequence, acknowledgment and window fields, timestamps and SACK
// edges (tcpx.go), the quoted header of an ICMP error (icmp.go), and the TTL
// and type of an echo reply.

// anyAddr converts an address of either family (a 4-in-6 one as IPv4).
func anyAddr(a netip.Addr) tcpip.Address {
	if a = a.Unmap(); a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

// rewriteDst sets the destination address and port of a decoded TCP or UDP
// packet.
func rewriteDst(p *packet, to netip.AddrPort) {
	if old := p.dst.Addr(); old != to.Addr() {
		p.setIPAddr(false, to.Addr())
		l4PseudoAddr(p, anyAddr(old), anyAddr(to.Addr()))
	}
	if p.dst.Port() != to.Port() {
		l4SetPort(p, false, to.Port())
	}
	p.dst = to
}

// rewriteSrc sets the source address and port of a decoded TCP or UDP packet.
func rewriteSrc(p *packet, to netip.AddrPort) {
	if old := p.src.Addr(); old != to.Addr() {
		p.setIPAddr(true, to.Addr())
		l4PseudoAddr(p, anyAddr(old), anyAddr(to.Addr()))
	}
	if p.src.Port() != to.Port() {
		l4SetPort(p, true, to.Port())
	}
	p.src = to
}

// setAddr sets the packet's source (src) or destination address and keeps
// every checksum that covers it right: IPv4's header checksum, and the
// pseudo-header's share of the TCP, UDP or ICMPv6 checksum. For packets
// whose ports stay (ICMP, a translated error's outer header).
func setAddr(p *packet, src bool, to netip.Addr) {
	old := p.dst.Addr()
	if src {
		old = p.src.Addr()
	}
	if old == to {
		return
	}
	p.setIPAddr(src, to)
	l4PseudoAddr(p, anyAddr(old), anyAddr(to))
	if src {
		p.src = netip.AddrPortFrom(to, p.src.Port())
	} else {
		p.dst = netip.AddrPortFrom(to, p.dst.Port())
	}
}

// l4PseudoAddr folds an address change into the TCP, UDP or ICMPv6
// checksum (ICMPv4 covers no pseudo-header). A partial checksum holds the
// pseudo-header sum itself: it is updated without complementing (the
// kernel's inet_proto_csum_replace4 with CHECKSUM_PARTIAL).
func l4PseudoAddr(p *packet, old, new tcpip.Address) {
	switch p.proto {
	case protoTCP:
		header.TCP(p.l4).UpdateChecksumPseudoHeaderAddress(old, new, !p.partial)
	case protoUDP:
		header.UDP(p.l4).UpdateChecksumPseudoHeaderAddress(old, new, !p.partial)
	case protoICMP6:
		if p.v6 && len(p.l4) >= header.ICMPv6MinimumSize {
			icmp := header.ICMPv6(p.l4)
			icmp.SetChecksum(csumReplaceAddr(icmp.Checksum(), old.AsSlice(), new.AsSlice()))
		}
	}
}

// csumReplaceAddr updates a stored checksum for an address (4 or 16 bytes)
// that changed from old to new.
func csumReplaceAddr(xsum uint16, old, new []byte) uint16 {
	for i := 0; i+1 < len(old) && i+1 < len(new); i += 2 {
		xsum = csumReplace16(xsum, binary.BigEndian.Uint16(old[i:]), binary.BigEndian.Uint16(new[i:]))
	}
	return xsum
}

// l4SetPort sets a port. A partial checksum does not cover ports yet: it
// must not change.
func l4SetPort(p *packet, src bool, port uint16) {
	if p.partial {
		off := 2
		if src {
			off = 0
		}
		p.l4[off], p.l4[off+1] = byte(port>>8), byte(port)
		return
	}
	switch {
	case p.proto == protoTCP && src:
		header.TCP(p.l4).SetSourcePortWithChecksumUpdate(port)
	case p.proto == protoTCP:
		header.TCP(p.l4).SetDestinationPortWithChecksumUpdate(port)
	case p.proto == protoUDP && src:
		header.UDP(p.l4).SetSourcePortWithChecksumUpdate(port)
	case p.proto == protoUDP:
		header.UDP(p.l4).SetDestinationPortWithChecksumUpdate(port)
	}
}

// csumReplace16 updates a checksum after one 16-bit word of the data it
// covers changed from old to new. xsum is the checksum field as stored (the
// complement of the one's complement sum) and so is the result, computed with
// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') (RFC 1141's HC + m + ~m' can give
// 0xffff where a computation from scratch gives 0x0000). A word that did not
// change leaves xsum as it is: eqn. 3 would turn a stored 0xffff (the other
// zero) into 0x0000 even then.
func csumReplace16(xsum, old, new uint16) uint16 {
	if old == new {
		return xsum
	}
	return ^checksum.Combine(checksum.Combine(^xsum, ^old), new)
}

// put16 writes v at b[off:] and returns the stored checksum xsum updated for
// the change; off must be even relative to the start of the checksummed data.
func put16(b []byte, off int, v uint16, xsum uint16) uint16 {
	old := binary.BigEndian.Uint16(b[off:])
	binary.BigEndian.PutUint16(b[off:], v)
	return csumReplace16(xsum, old, v)
}

// putAddr writes a (4 bytes for IPv4, 16 for IPv6) into b[off:] and
// returns xsum updated for it.
func putAddr(b []byte, off int, a netip.Addr, xsum uint16) uint16 {
	n := a.AsSlice()
	for i := 0; i < len(n); i += 2 {
		xsum = put16(b, off+i, binary.BigEndian.Uint16(n[i:]), xsum)
	}
	return xsum
}
