package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

func baseModelsCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "base-models",
		Short: "List the base models jobs can fine-tune (jobs create --base-model)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list struct {
				Models []struct {
					ID                string   `json:"id"`
					Name              string   `json:"name"`
					Provider          string   `json:"provider"`
					ParameterCount    string   `json:"parameterCount"`
					MaxSequenceLength int      `json:"maxSequenceLength"`
					DefaultHardware   string   `json:"defaultHardware"`
					Trainers          []string `json:"trainers"`
				} `json:"models"`
			}
			raw, err := a.client.get(cmd.Context(), fineTuning+"/base-models", &list)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(cmd.OutOrStdout(), raw)
			}
			rows := make([][]string, len(list.Models))
			for i, m := range list.Models {
				// No trainer: no worker of its pool is running now.
				trainers := strings.Join(m.Trainers, ", ")
				if trainers == "" {
					trainers = "-"
				}
				rows[i] = []string{m.ID, m.Name, m.Provider, m.ParameterCount, strconv.Itoa(m.MaxSequenceLength), m.DefaultHardware, trainers}
			}
			return table(cmd.OutOrStdout(), []string{"ID", "NAME", "PROVIDER", "PARAMETERS", "MAX TOKENS", "HARDWARE", "TRAINERS"}, rows)
		},
	}
}

func hardwareCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "hardware",
		Short: "List the hardware pools (jobs create --hardware), their price, capacity and your jobs on them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list struct {
				Hardware []struct {
					ID          string  `json:"id"`
					Name        string  `json:"name"`
					GPUMemory   string  `json:"gpuMemory"`
					GPUCount    int     `json:"gpuCount"`
					CostPerHour float64 `json:"costPerHour"`
					TotalSlots  int64   `json:"totalSlots"`
					QueuedJobs  int64   `json:"queuedJobs"`
					RunningJobs int64   `json:"runningJobs"`
				} `json:"hardware"`
			}
			raw, err := a.client.get(cmd.Context(), fineTuning+"/hardware", &list)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(cmd.OutOrStdout(), raw)
			}
			rows := make([][]string, len(list.Hardware))
			for i, h := range list.Hardware {
				rows[i] = []string{h.ID, h.Name, fmt.Sprintf("%d × %s", h.GPUCount, h.GPUMemory), usd(h.CostPerHour),
					strconv.FormatInt(h.TotalSlots, 10), strconv.FormatInt(h.QueuedJobs, 10), strconv.FormatInt(h.RunningJobs, 10)}
			}
			return table(cmd.OutOrStdout(), []string{"ID", "NAME", "GPUS", "COST/HOUR", "SLOTS", "YOUR QUEUED", "YOUR RUNNING"}, rows)
		},
	}
}
