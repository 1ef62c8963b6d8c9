package stack

import (
	"errors"
	"os"
)

// isClosedErr reports whether err comes from using a closed file.
func isClosedErr(err error) bool {
	return errors.Is(err, os.ErrClosed)
}
