package sandbox

import (
	"io"

	"github.com/egressd/egressd/internal/mask"
)

// SecretMask is what a secret value becomes in a sandbox's streamed output.
const SecretMask = mask.Mask

// MinSecretLength is the length under which a secret is weak: it is still
// masked (a secret never reaches the output whatever its length), but a
// short value also masks every innocent occurrence of those bytes ("1234"
// in any number), and a value that short can be guessed anyway. The
// launcher should warn about such values.
const MinSecretLength = 4

// NewMasker returns a writer that copies to w with every occurrence of any
// of secrets replaced by SecretMask (mask.NewWriter: a secret split across
// writes included). Close flushes what it held back; it does not close w.
func NewMasker(w io.Writer, secrets []string) io.WriteCloser { return mask.NewWriter(w, secrets) }

// MaskSecrets returns s with every secret replaced by SecretMask.
func MaskSecrets(s string, secrets []string) string { return mask.String(s, secrets) }
