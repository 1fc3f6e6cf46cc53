package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/spf13/cobra"
)

func chatCommand(a *app) *cobra.Command {
	var system string
	cmd := &cobra.Command{
		Use:   "chat MODEL [MESSAGE]",
		Short: "Send a message to a deployed model and print its reply",
		Long: `Send a message to a deployed fine-tuned model (` + "`tuneforge models list`" + ` lists
them) through POST /v1/chat/completions, and print its reply. Without
MESSAGE, or with -, the message is read from stdin.`,
		Example: `  tuneforge chat llama-3.1-8b-support-v1 "My invoice is wrong"
  echo "My invoice is wrong" | tuneforge chat llama-3.1-8b-support-v1`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			msg := ""
			if len(args) == 2 && args[1] != "-" {
				msg = args[1]
			} else {
				in := cmd.InOrStdin()
				if isTerminal(in) {
					fmt.Fprintln(cmd.ErrOrStderr(), "Type the message; end it with Ctrl-D.")
				}
				b, err := io.ReadAll(in)
				if err != nil {
					return fmt.Errorf("read the message from stdin: %w", err)
				}
				msg = strings.TrimSpace(string(b))
			}
			if msg == "" {
				return UsageError(errors.New("no message: give it after the model, or on stdin"))
			}
			type message struct {
				Role    string `json:"role"`
				Content string `json:"content"`
			}
			var messages []message
			if system != "" {
				messages = append(messages, message{"system", system})
			}
			messages = append(messages, message{"user", msg})
			raw, err := a.client.call(cmd.Context(), http.MethodPost, "/v1/chat/completions",
				map[string]any{"model": args[0], "messages": messages})
			var apiErr *APIError
			if errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound {
				return fmt.Errorf("%w\n`tuneforge models list` lists the deployed models", err)
			}
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(cmd.OutOrStdout(), raw)
			}
			var answer struct {
				Choices []struct {
					Message message `json:"message"`
				} `json:"choices"`
			}
			if err := json.Unmarshal(raw, &answer); err != nil {
				return fmt.Errorf("read the model's answer: %w", err)
			}
			if len(answer.Choices) == 0 {
				return errors.New("the model answered with no reply")
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), text(answer.Choices[0].Message.Content))
			return err
		},
	}
	cmd.Flags().StringVar(&system, "system", "", "a system message to send before yours")
	return cmd
}
