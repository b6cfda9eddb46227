package deploy_test

import (
	"bufio"
	"bytes"

	"k8s.io/apimachinery/pkg/runtime/schema"
)

var schemaNamespaces = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
