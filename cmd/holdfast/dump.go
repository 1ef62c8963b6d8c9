package main

import (
	"context"
	"encoding/json"
	"os"

	"holdfast/daemon/adminapi"

	"github.com/urfave/cli/v2"
)

// dumpCommand is `holdfast service dump`: the running configuration as a
// --config file, like `ipvsadm -S`. Runtime changes are in it (weights,
// reals added or removed), so that the file, run or reloaded, serves what
// runs now; reals carry their cookie ids explicitly, so that their flows'
// cookies stay valid. A service whose reals were all removed is written
// with "reals": [] (a --config file may hold one).
func dumpCommand() *cli.Command {
	return &cli.Command{
		Name:         "dump",
		Usage:        "print the running services as a --config file (like ipvsadm -S): holdfast service dump > holdfast.json",
		Flags:        ctlFlags(),
		OnUsageError: usageError,
		Action:       ctlServiceDump,
	}
}

func ctlServiceDump(c *cli.Context) error {
	if c.Args().Len() > 0 {
		return usagef("service dump: unexpected argument %q", c.Args().First())
	}
	cl := ctlClient(c)
	cfg, err := cl.config()
	if err != nil {
		return cli.Exit(err.Error(), exitRuntime)
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if _, err := os.Stdout.Write(append(b, '\n')); err != nil {
		return err
	}
	return nil
}

func (c *directorClient) config() (adminapi.Config, error) {
	out, err := c.Config(context.Background())
	return out, flagError(err)
}
