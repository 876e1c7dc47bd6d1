package confidential_test

import (
	"errors"
	"fmt"

	"github.com/sealflow/sealflow/confidential"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/seal"
)

// An exchange codec seals each frame of a channel in sequence; the receiving
// side refuses the same frame delivered twice and names the rule.
func ExampleExchangeCodec() {
	codec, err := confidential.NewEphemeralExchangeCodec("job-7", confidential.WithRejectHandler(func(scope, reason string, err error) {
		fmt.Println("reported:", scope, reason)
	}))
	if err != nil {
		fmt.Println(err)
		return
	}
	hdr := runtime.FrameHeader{Job: "job-7", Edge: 0, From: 1, To: 0, Seq: 1}
	sealed, _ := codec.Seal(hdr, nil, []byte("\x02watermark"))
	plain, err := codec.Open(hdr, nil, sealed)
	fmt.Printf("%q %v\n", plain[1:], err)

	hdr.Seq = 2
	_, err = codec.Open(hdr, nil, sealed) // replayed
	var r *seal.Rejection
	if errors.As(err, &r) {
		fmt.Println("refused by", r.RefusedBy())
	}
	// Output:
	// "watermark" <nil>
	// reported: job-7 replayed
	// refused by seal.replayed
}
