package lab

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"holdfast/internal/unixhttp"

	"github.com/rs/zerolog"
)

// Ask sends each command with its method and path, passes a refusal's
// message through, and says when no supervisor listens.
func TestAsk(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "lab.sock")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		unixhttp.WriteJSON(w, Status{Active: "A", Directors: []DirectorStatus{{Label: "A", Running: true, PID: 42, Flows: 3}}})
	})
	mux.HandleFunc("POST /failover", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "this lab has one director", http.StatusConflict)
	})
	mux.HandleFunc("POST /down", func(w http.ResponseWriter, _ *http.Request) {
		unixhttp.WriteJSON(w, Status{Message: "the lab is down"})
	})
	stop, err := unixhttp.Serve(sock, mux, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := Ask(ctx, sock, AskStatus)
	if err != nil || st.Active != "A" || len(st.Directors) != 1 || st.Directors[0].PID != 42 || st.Directors[0].Flows != 3 {
		t.Errorf("Ask(status) = %+v, %v", st, err)
	}
	if _, err := Ask(ctx, sock, AskFailover); err == nil || err.Error() != "this lab has one director" {
		t.Errorf("Ask(failover) = %v, want the supervisor's refusal", err)
	}
	if st, err := Ask(ctx, sock, AskDown); err != nil || st.Message != "the lab is down" {
		t.Errorf("Ask(down) = %+v, %v", st, err)
	}
	if _, err := Ask(ctx, sock, "reboot"); err == nil || !strings.Contains(err.Error(), `"reboot"`) {
		t.Errorf("Ask(reboot) = %v, want an unknown command", err)
	}
	stop()
	if _, err := Ask(ctx, sock, AskStatus); !errors.Is(err, unixhttp.ErrUnreachable) {
		t.Errorf("Ask with no supervisor = %v, want ErrUnreachable", err)
	}
}

// POST /down closes Down at once but answers only once Close has torn the
// lab down, so that `holdfast lab down` returns with the lab gone.
func TestSupervisorDownAnswersAfterClose(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "lab.sock")
	s := &Supervisor{l: &Lab{}, down: make(chan struct{}), gone: make(chan struct{})}
	stop, err := unixhttp.Serve(sock, s.handler(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	s.stopSock = stop
	type answer struct {
		st  Status
		err error
	}
	answered := make(chan answer, 1)
	go func() {
		st, err := Ask(context.Background(), sock, AskDown)
		answered <- answer{st, err}
	}()
	select {
	case <-s.Down():
	case <-time.After(10 * time.Second):
		t.Fatal("Down not closed 10s after POST /down")
	}
	select {
	case a := <-answered:
		t.Fatalf("POST /down answered before Close: %+v, %v", a.st, a.err)
	default:
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	var a answer
	select {
	case a = <-answered: // Close stops the socket only after the answer is out
	case <-time.After(10 * time.Second):
		t.Fatal("POST /down not answered 10s after Close")
	}
	if a.err != nil || a.st.Message != "the lab is down" {
		t.Errorf("POST /down = %+v, %v; want the lab is down", a.st, a.err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}
