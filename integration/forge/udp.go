package forge

import (
	"fmt"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// UDP4 is an IPv4 packet carrying a UDP datagram from src to dst with the
// given TTL (0 means 64), both checksums computed: for forged datagrams
// (a BFD packet claiming a router's address, say).
func UDP4(src, dst netip.AddrPort, ttl uint8, payload []byte) ([]byte, error) {
	if !src.Addr().Is4() || !dst.Addr().Is4() {
		return nil, fmt.Errorf("forge: %v -> %v: IPv4 addresses only", src, dst)
	}
	n := header.IPv4MinimumSize + header.UDPMinimumSize + len(payload)
	if n > 0xffff {
		return nil, fmt.Errorf("forge: packet of %d bytes", n)
	}
	if ttl == 0 {
		ttl = 64
	}
	pkt := make([]byte, n)
	s, d := tcpip.AddrFrom4(src.Addr().As4()), tcpip.AddrFrom4(dst.Addr().As4())
	ip := header.IPv4(pkt)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(n), TTL: ttl, Protocol: uint8(header.UDPProtocolNumber), SrcAddr: s, DstAddr: d})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(pkt[header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u[header.UDPMinimumSize:], payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, s, d, uint16(len(u)))
	xsum = checksum.Checksum(payload, xsum)
	u.SetChecksum(^u.CalculateChecksum(xsum))
	return pkt, nil
}
