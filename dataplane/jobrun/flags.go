package jobrun

import "github.com/spf13/pflag"

// RegisterFlags registers job-run's flags on f: the tuning Job's arguments (jobs.Build
// writes them), parsed into c and the admitted private dataset hosts into allow.
func RegisterFlags(f *pflag.FlagSet, c *Config, allow *[]string) {
	f.StringVar(&c.DataDir, "data", "/mnt/data", "where the dataset goes")
	f.StringVar(&c.ResultsDir, "results", "/mnt/results", "where the trainer leaves the adapter")
	f.StringSliceVar(&c.InputURLs, "input-url", nil, "dataset URL (repeatable)")
	f.StringSliceVar(&c.EvalURLs, "eval-url", nil,
		"eval set URL (repeatable): its rows, not the held-out ones, are what the trainer's task scores are taken on (--eval-data)")
	f.StringVar(&c.InputImage, "input-image", "", "dataset image (its /data directory)")
	f.StringVar(&c.OutputImage, "output-image", "", "the adapter's image reference: its layer is uploaded to this repository")
	f.StringVar(&c.PushSecret, "push-secret", "", "dockerconfigjson file with the registry credentials")
	f.BoolVar(&c.InsecureRegistry, "insecure-registry", false, "plain HTTP to the registry (local registries and tests only)")
	f.StringVar(&c.TerminationLog, "termination-log", "/dev/termination-log", "where the summary (or the failure reason) goes")
	f.StringSliceVar(allow, "allow-host", nil, "private dataset hosts or CIDRs to admit")
	f.StringVar(&c.CheckpointTag, "checkpoint-tag", "",
		"names the run's checkpoints (in the output repository, or the output volume); a run that finds one continues from the newest (none: no "+
			"checkpoints are kept)")
	f.StringVar(&c.CompareImage, "compare-image", "", "the adapter serving now: pulled for the trainer to score beside the new one (--compare-adapter)")
	f.IntVar(&c.KeepCheckpoints, "keep-checkpoints", DefaultKeepCheckpoints, "how many of the run's newest checkpoints stay in the registry")
}
