package lab

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// RealHeader is the response header in which a backend names itself.
const RealHeader = "X-Real"

// MaxPatternBytes bounds /bytes?n=.
const MaxPatternBytes = 1 << 30

// Counters count what one real's backends served.
type Counters struct {
	HTTPConns    atomic.Int64 // TCP connections accepted by the HTTP server
	HTTPRequests atomic.Int64 // HTTP requests answered (any path)
	UDPDatagrams atomic.Int64 // datagrams echoed
	Uploads      atomic.Int64 // POST /upload bodies read to their end and answered
}

// UploadResult is the JSON body a backend answers to POST /upload.
type UploadResult struct {
	Real   string `json:"real"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// patternSeed fixes the byte stream of Pattern, so both ends can check a
// transfer without sending the expected digest along.
var patternSeed = [32]byte{'h', 'o', 'l', 'd', 'f', 'a', 's', 't', ' ', 'l', 'a', 'b'}

// Pattern returns the first n bytes of a fixed pseudo-random stream
// (ChaCha8): no period a reordering or a misplaced segment could hide in.
func Pattern(n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8(patternSeed), n)
}

// PatternSHA256 is the hex SHA-256 of Pattern(n).
func PatternSHA256(n int64) string {
	h := sha256.New()
	if _, err := io.Copy(h, Pattern(n)); err != nil {
		panic(err) // Pattern never fails
	}
	return hex.EncodeToString(h.Sum(nil))
}

// HTTPHandler is a real server's HTTP backend; it names itself in the
// RealHeader header of every response:
//
//	GET  /bytes?n=N  N bytes of Pattern (Content-Length set)
//	POST /upload     reads the body, answers UploadResult as JSON
//	any other        body "<identity>\n"
//
// It counts every request in c, and every upload it read to the end.
func HTTPHandler(identity string, c *Counters) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 || n > MaxPatternBytes {
			http.Error(w, fmt.Sprintf("n=%q: want a byte count 0..%d", r.URL.Query().Get("n"), MaxPatternBytes), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.Copy(w, Pattern(n)) //nolint:errcheck // the client sees a short body
	})
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		c.Uploads.Add(1)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(UploadResult{Real: identity, Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil))}) //nolint:errcheck
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, identity+"\n") //nolint:errcheck
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.HTTPRequests.Add(1)
		w.Header().Set(RealHeader, identity)
		mux.ServeHTTP(w, r)
	})
}

// ServeUDPEcho sends every datagram read from pc back to its sender, counting
// them in c. It returns nil once pc is closed.
func ServeUDPEcho(pc net.PacketConn, c *Counters) error {
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		c.UDPDatagrams.Add(1)
		if _, err := pc.WriteTo(buf[:n], from); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// A send error (no route yet, say) loses this echo only.
			continue
		}
	}
}

// Serve starts the real's backends inside its namespace: HTTPHandler on
// httpPort (keep-alive on) and ServeUDPEcho on udpPort, of each of its
// addresses (Addrs: IPv6 too in a dual-stack lab); a port of 0 skips that
// server. The lab stops them on Close.
func (r *Real) Serve(httpPort, udpPort int) error {
	var wg sync.WaitGroup
	var srv *http.Server
	var pcs []net.PacketConn
	stop := func() error {
		var errs []error
		if srv != nil {
			errs = append(errs, srv.Close())
		}
		for _, pc := range pcs {
			errs = append(errs, pc.Close())
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	network := func(proto string, a netip.Addr) string {
		if a.Is4() {
			return proto + "4"
		}
		return proto + "6"
	}
	if httpPort != 0 {
		var lns []net.Listener
		for _, a := range r.Addrs() {
			ln, err := r.Listen(network("tcp", a), netip.AddrPortFrom(a, uint16(httpPort)).String())
			if err != nil {
				for _, ln := range lns {
					ln.Close()
				}
				return err
			}
			lns = append(lns, ln)
		}
		srv = &http.Server{
			Handler:           HTTPHandler(r.Label, &r.Stats),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ConnState: func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					r.Stats.HTTPConns.Add(1)
				}
			},
		}
		for _, ln := range lns {
			wg.Go(func() { srv.Serve(ln) }) //nolint:errcheck // ErrServerClosed on stop
		}
	}
	if udpPort != 0 {
		for _, a := range r.Addrs() {
			pc, err := r.ListenPacket(network("udp", a), netip.AddrPortFrom(a, uint16(udpPort)).String())
			if err != nil {
				return errors.Join(err, stop())
			}
			pcs = append(pcs, pc)
			wg.Go(func() { ServeUDPEcho(pc, &r.Stats) }) //nolint:errcheck
		}
	}
	if err := r.lab.register(nil, stop); err != nil {
		return errors.Join(err, stop())
	}
	return nil
}

// ServeBackends starts every real's backends on the default ports
// (DefaultHTTPPort, DefaultUDPPort).
func (l *Lab) ServeBackends() error {
	for _, r := range l.Reals {
		if err := r.Serve(DefaultHTTPPort, DefaultUDPPort); err != nil {
			return err
		}
	}
	return nil
}
