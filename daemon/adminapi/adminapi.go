// Package adminapi is the wire format of the director's admin API (HTTP
// with JSON bodies on a unix socket) and a small client of it. The daemon
// serves it; `holdfast conns`, `stats`, `service` and `real` and the lab
// call it. The JSON field names are a public contract: they stay as they
// are, whatever the packages behind them call the same things.
package adminapi

import (
	"context"
	"net/netip"
	"time"

	"holdfast/internal/unixhttp"
)

// The API's paths.
const (
	PathConns    = "/conns"    // GET: []Conn
	PathStats    = "/stats"    // GET: one object, a key per counter (see package daemon)
	PathServices = "/services" // GET: []Service
	PathReal     = "/real"     // POST RealChange: []Service after the change
	PathInfo     = "/info"     // GET: Info
	PathConfig   = "/config"   // GET: Config, the running configuration
	PathBGP      = "/bgp"      // GET: BGP (404 without BGP)
)

// Info says which director answers: the CLI prints it first, since a
// socket name alone (the default one is per network namespace) does not
// tell an operator which process that is.
type Info struct {
	ID        int       `json:"director_id"` // --director-id
	PID       int       `json:"pid"`
	TUN       string    `json:"tun"`
	NetNS     uint64    `json:"netns"`                // inode of its network namespace (/proc/PID/ns/net)
	NetNSName string    `json:"netns_name,omitempty"` // its name under /run/netns (ip netns), if it has one
	Started   time.Time `json:"started"`
	Uptime    float64   `json:"uptime_s"`
	Version   string    `json:"version"`
	Socket    string    `json:"admin_socket"`
}

// Conn is one flow as `holdfast conns` shows it.
type Conn struct {
	Proto      string  `json:"proto"`
	Client     string  `json:"client"`
	VIP        string  `json:"vip"`
	Real       string  `json:"real"`
	Local      string  `json:"local,omitempty"` // recovery address:port (recovered flows)
	State      string  `json:"state"`
	Kind       string  `json:"kind"`
	SeqDelta   uint32  `json:"seq_delta"`
	AckDelta   uint32  `json:"ack_delta"`
	TSvalDelta uint32  `json:"tsval_delta"`
	TSecrDelta uint32  `json:"tsecr_delta"`
	ExpiresIn  float64 `json:"expires_in_s"`
}

// Service is one service with its reals.
type Service struct {
	Service     string        `json:"service"` // PROTO:VIP:PORT
	Scheduler   string        `json:"scheduler"`
	Persistence time.Duration `json:"persistence_ns"`
	Reals       []Real        `json:"reals"`
}

// Real is one real of a service with its counters. The traffic fields keep
// the capitalised names they have always had on the wire.
type Real struct {
	Addr       netip.AddrPort `json:"addr"`
	Weight     int            `json:"weight"`
	Down       bool           `json:"down"`    // marked down by health checks
	Removed    bool           `json:"removed"` // removed at runtime, flows still draining
	Rehome     bool           `json:"rehome"`  // removed with rehome: its flows move away
	Active     int            `json:"active"`
	Inactive   int            `json:"inactive"`
	Conns      uint64         `json:"conns"`     // flows ever created on it
	PacketsIn  uint64         `json:"PacketsIn"` // client -> real
	BytesIn    uint64         `json:"BytesIn"`
	PacketsOut uint64         `json:"PacketsOut"` // real -> client
	BytesOut   uint64         `json:"BytesOut"`

	CookieID uint16 `json:"cookie_id"` // timestamp cookie id; 0: none
}

// Config is the running configuration in the form of a --config file
// (holdfast run --config; balancer.ServiceConfig has the same fields), as
// `holdfast service dump` prints it: runtime changes included, reals
// removed at runtime left out.
type Config struct {
	Services []ConfigService `json:"services"`
}

// ConfigService is one service of a Config.
type ConfigService struct {
	Service     string   `json:"service"`               // PROTO:VIP:PORT
	Scheduler   string   `json:"scheduler"`             // rr, wrr, sh, dh, lc, mh or mh:addr
	Persistence string   `json:"persistence,omitempty"` // Go duration; none if absent
	Check       string   `json:"check,omitempty"`       // tcp, http:/PATH[=STATUS]; none if absent
	Reals       []string `json:"reals"`                 // ADDR:PORT*WEIGHT[,id=N], N its cookie id
}

// RealChange is the body of POST /real. An error answer names the field it
// is about first ("real ...", "service ...", "weight ..."): the CLI, whose
// flags carry the same names, adds the dashes.
type RealChange struct {
	Op      string `json:"op"`      // add, remove, weight
	Service string `json:"service"` // PROTO:VIP:PORT; for remove "" means every service with the real
	Real    string `json:"real"`    // ADDR:PORT[*WEIGHT][,id=N] for add, ADDR:PORT otherwise
	Weight  int    `json:"weight"`  // for weight
	Rehome  bool   `json:"rehome"`  // for remove: move the real's flows to other reals
}

// Fields of RealChange that an error answer can name.
var RealChangeFields = []string{"real", "service", "weight", "rehome"}

// Client calls a director's admin API.
type Client struct{ c *unixhttp.Client }

// NewClient returns a client of the admin socket at path.
func NewClient(path string) *Client { return &Client{unixhttp.NewClient(path)} }

// Close closes the client's idle connections.
func (c *Client) Close() { c.c.HTTP.CloseIdleConnections() }

// Conns lists the live flows.
func (c *Client) Conns(ctx context.Context) ([]Conn, error) {
	var out []Conn
	return out, c.c.Do(ctx, "GET", PathConns, nil, &out)
}

// Stats decodes the counters into out: a map[string]any, or a struct with
// the fields the caller reads (json tags = counter names).
func (c *Client) Stats(ctx context.Context, out any) error {
	return c.c.Do(ctx, "GET", PathStats, nil, out)
}

// Services lists the services and their reals.
func (c *Client) Services(ctx context.Context) ([]Service, error) {
	var out []Service
	return out, c.c.Do(ctx, "GET", PathServices, nil, &out)
}

// Info says which director answers.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var out Info
	return out, c.c.Do(ctx, "GET", PathInfo, nil, &out)
}

// Config returns the running configuration as a --config file.
func (c *Client) Config(ctx context.Context) (Config, error) {
	var out Config
	return out, c.c.Do(ctx, "GET", PathConfig, nil, &out)
}

// ChangeReal applies ch and returns the services after it.
func (c *Client) ChangeReal(ctx context.Context, ch RealChange) ([]Service, error) {
	var out []Service
	return out, c.c.Do(ctx, "POST", PathReal, ch, &out)
}

// BGP is the embedded speaker's state (`holdfast bgp`, as `birdc show
// protocols` and `show route export`).
type BGP struct {
	LocalAS    uint32    `json:"local_as"`
	RouterID   string    `json:"router_id"`
	MED        uint32    `json:"med"`
	Peers      []BGPPeer `json:"peers"`
	ClientSide []string  `json:"client_side"` // prefixes announced to the client-side peers
	RealSide   []string  `json:"real_side"`   // to the real-side peers
	Withdrawn  bool      `json:"withdrawn"`   // stopping: everything withdrawn
}

// BGPPeer is one session.
type BGPPeer struct {
	Addr       string      `json:"addr"`
	Side       string      `json:"side"` // client or real
	AS         uint32      `json:"as"`
	State      string      `json:"state"` // Idle, Connect, Active, OpenSent, OpenConfirm, Established
	Since      time.Time   `json:"since"`
	Uptime     float64     `json:"uptime_seconds"` // 0 unless established
	LastError  string      `json:"last_error,omitempty"`
	Advertised uint64      `json:"advertised"`
	Received   uint64      `json:"received"`      // all refused: holdfast imports nothing
	BFD        *BFDSession `json:"bfd,omitempty"` // nil: BFD off (--bfd off)
}

// BFDSession is the BFD session with a BGP peer.
type BFDSession struct {
	State       string    `json:"state"` // Down, Init, Up, AdminDown
	RemoteState string    `json:"remote_state"`
	Diag        string    `json:"diag"` // why it last left Up
	Since       time.Time `json:"since"`
	DetectTime  float64   `json:"detect_time_seconds"` // the router's multiplier times the slower of its tx and our rx
	TxInterval  float64   `json:"tx_interval_seconds"` // 0: silent (passive, the router has not asked)
}

// BGP returns the speaker's state; an error without BGP.
func (c *Client) BGP(ctx context.Context) (BGP, error) {
	var out BGP
	return out, c.c.Do(ctx, "GET", PathBGP, nil, &out)
}
