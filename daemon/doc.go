// Package daemon runs a director: it owns every lifetime of the process
// but main's. Run opens the device, sets up the host routes, builds the
// recovery netstack, the recovery engine and the NAT director, and runs the
// stages (clock, expiry sweep, packet pumps, health checker, events, admin
// API, metrics, pprof) until its context ends; it reloads the services on
// SIGHUP, logs the counters on SIGUSR1 and tells a service manager when it
// is ready (sd_notify). Everything it starts is stopped before Run returns.
//
// The counters are declared once, in one table (counters.go): /stats, the
// Prometheus metrics and the counters and stopped log lines are generated
// from it and carry the same names. The admin API's wire format is package
// adminapi.
//
// It must not parse flags or name them (the CLI does, and maps a returned
// *Error's Part to its flag), call os.Exit, or hold packet logic (nat does).
// It runs without root over an in-memory device (Config.Device).
package daemon
