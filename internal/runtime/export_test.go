package runtime

import cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

type cehttpResult = cehttp.Result
