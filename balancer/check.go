package balancer

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// CheckKind is how a real's health is checked.
type CheckKind uint8

// Check kinds. The zero value is CheckNone: a real that is not checked is
// always up.
const (
	CheckNone CheckKind = iota // no check; the real is always up.
	CheckTCP                   // connect, then close.
	CheckHTTP                  // GET Path; the status must be Status.
)

// String returns "none", "tcp" or "http".
func (k CheckKind) String() string {
	switch k {
	case CheckNone:
		return "none"
	case CheckTCP:
		return "tcp"
	case CheckHTTP:
		return "http"
	}
	return "check(" + strconv.Itoa(int(k)) + ")"
}

// Check is a health check as given by --check or a config file's "check".
// Path and Status are used by CheckHTTP only. Check is comparable, so a Target
// holding it can key a map.
type Check struct {
	Kind   CheckKind
	Path   string // request path and query, starting with "/".
	Status int    // the status a healthy real answers; 100..599.
}

// DefaultCheckStatus is the status an HTTP check expects when the spec gives
// none. The match is exact, as HAProxy's "http-check expect status 200":
// HAProxy's bare "option httpchk" takes any 2xx or 3xx, which would also pass
// a real that redirects every request to an error page.
const DefaultCheckStatus = 200

const checkSyntax = "expected none, tcp, http:/PATH or http:/PATH=STATUS"

// ParseCheck parses a check spec: "none", "tcp", "http:/PATH" (status 200) or
// "http:/PATH=STATUS", e.g. http:/healthz=204. The kind is case-insensitive,
// the path is not. The status is what follows the last "=", so a path that
// itself contains "=" (a query) must give the status: http:/h?x=1=200.
//
// The empty string is an error, not none: callers that want a default (a
// config file without "check") decide it themselves.
func ParseCheck(s string) (Check, error) {
	kind, rest, hasRest := strings.Cut(s, ":")
	switch strings.ToLower(kind) {
	case "none":
		if !hasRest {
			return Check{}, nil
		}
	case "tcp":
		if !hasRest {
			return Check{Kind: CheckTCP}, nil
		}
	case "http":
		if hasRest && strings.HasPrefix(rest, "/") {
			return parseHTTPCheck(s, rest)
		}
	}
	return Check{}, fmt.Errorf("invalid check %q: %s", s, checkSyntax)
}

func parseHTTPCheck(s, rest string) (Check, error) {
	c := Check{Kind: CheckHTTP, Path: rest, Status: DefaultCheckStatus}
	if i := strings.LastIndexByte(rest, '='); i >= 0 {
		status, err := parseStatus(rest[i+1:])
		if err != nil && strings.Contains(rest[:i], "?") {
			// Most likely a query read as a status.
			return Check{}, fmt.Errorf("invalid check %q: %w; a path with \"=\" must end with =STATUS, e.g. http:/healthz?full=1=200", s, err)
		}
		if err != nil {
			return Check{}, fmt.Errorf("invalid check %q: %w", s, err)
		}
		c.Path, c.Status = rest[:i], status
	}
	if err := validPath(c.Path); err != nil {
		return Check{}, fmt.Errorf("invalid check %q: %w", s, err)
	}
	return c, nil
}

// parseStatus accepts three digits 100..599, the range of RFC 9110 §15.
func parseStatus(s string) (int, error) {
	if len(s) != 3 || strings.Trim(s, "0123456789") != "" || s < "100" || s > "599" {
		return 0, fmt.Errorf("status %q: expected a number 100..599", s)
	}
	n, _ := strconv.Atoi(s)
	return n, nil
}

// validPath rejects what cannot go on an HTTP request line as it is: spaces
// and control characters (they would split or end the line), a fragment
// (never sent), text that is not a request URI, and a URL.
func validPath(p string) error {
	if p == "" || p[0] != '/' {
		return fmt.Errorf("path %q: expected a path starting with /", p)
	}
	if strings.HasPrefix(p, "//") {
		// http://host/x is a URL; the check goes to the real itself.
		return fmt.Errorf("path %q: expected a path, not a URL: the check goes to the real's ADDR:PORT", p)
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f || c == '#' {
			return fmt.Errorf("path %q: expected no spaces, control characters or #", p)
		}
	}
	if _, err := url.ParseRequestURI(p); err != nil {
		return fmt.Errorf("path %q: expected a request URI: %w", p, errors.Unwrap(err))
	}
	return nil
}

// String returns the check in the form ParseCheck reads: none, tcp,
// http:/PATH, or http:/PATH=STATUS when the status is not 200 or the path
// holds an "=".
func (c Check) String() string {
	switch c.Kind {
	case CheckNone, CheckTCP:
		return c.Kind.String()
	case CheckHTTP:
		if c.Status == DefaultCheckStatus && !strings.Contains(c.Path, "=") {
			return "http:" + c.Path
		}
		return "http:" + c.Path + "=" + strconv.Itoa(c.Status)
	}
	return c.Kind.String()
}

// CheckTiming is when checks run and how many of them change a real's state,
// with HAProxy's meanings (server keywords inter, rise, fall):
//
//   - Interval is the time from the start of one check of a real to the start
//     of the next;
//   - Timeout bounds one whole check: connect, and for HTTP the request and
//     the response status line and headers. A check that runs out of time
//     fails;
//   - an up real goes down after Fall consecutive failed checks, and a down
//     real comes back up after Rise consecutive successful ones.
//
// A real that stops answering is thus marked down within
// Fall×Interval + Timeout of its failure.
type CheckTiming struct {
	Interval time.Duration
	Timeout  time.Duration
	Rise     int
	Fall     int
}

// DefaultCheckTiming is HAProxy's default: inter 2s, rise 2, fall 3. HAProxy
// without "timeout check" bounds a whole check (connect and read) by inter,
// so the timeout is 2s as well.
var DefaultCheckTiming = CheckTiming{Interval: 2 * time.Second, Timeout: 2 * time.Second, Rise: 2, Fall: 3}

// Validate reports the first field that cannot work: interval and timeout
// must be positive, the timeout no longer than the interval (so one check of
// a real ends before the next starts), rise and fall at least 1. Errors name
// the field and what it expects, without the flag: callers prefix it.
func (t CheckTiming) Validate() error {
	switch {
	case t.Interval <= 0:
		return fmt.Errorf("check interval %v: expected a positive duration, e.g. 2s", t.Interval)
	case t.Timeout <= 0:
		return fmt.Errorf("check timeout %v: expected a positive duration, e.g. 2s", t.Timeout)
	case t.Timeout > t.Interval:
		return fmt.Errorf("check timeout %v exceeds the check interval %v: expected a timeout no longer than the interval", t.Timeout, t.Interval)
	case t.Rise < 1:
		return fmt.Errorf("check rise %d: expected at least 1 successful check to mark a real up", t.Rise)
	case t.Fall < 1:
		return fmt.Errorf("check fall %d: expected at least 1 failed check to mark a real down", t.Fall)
	}
	return nil
}
