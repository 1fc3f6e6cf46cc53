package cli

import (
	"time"

	"github.com/spf13/cobra"
)

func modelsCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "models",
		Short: "List the organization's deployed models",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List deployed models, which `tuneforge chat` talks to",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list struct {
				Data []struct {
					ID        string `json:"id"`
					Created   int64  `json:"created"`
					BaseModel string `json:"base_model"`
					JobID     string `json:"job_id"`
				} `json:"data"`
			}
			raw, err := a.client.get(cmd.Context(), "/v1/models", &list)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(cmd.OutOrStdout(), raw)
			}
			rows := make([][]string, len(list.Data))
			for i, m := range list.Data {
				created := time.Unix(m.Created, 0)
				rows[i] = []string{m.ID, m.BaseModel, m.JobID, when(&created)}
			}
			return table(cmd.OutOrStdout(), []string{"MODEL", "BASE MODEL", "JOB", "DEPLOYED"}, rows)
		},
	})
	return cmd
}
