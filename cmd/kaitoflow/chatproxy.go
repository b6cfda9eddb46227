package main

import (
	"github.com/spf13/cobra"

	"github.com/kaitoflow/kaitoflow/dataplane/chatproxy"
)

// newChatProxy is `kaitoflow chat-proxy`: the same command as the chat-proxy image's binary.
func newChatProxy(g *globals) *cobra.Command { return chatproxy.Command(g.logger) }
