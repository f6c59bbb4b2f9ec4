package localrun

import (
	"fmt"
	"path/filepath"
	"sort"

	"stagecoach/model"
	"stagecoach/model/train"
)

// ValLoss evaluates the full model (no stage skipped) assembled from the
// shard files the workers saved in a checkpoint directory.
func ValLoss(dir string, m model.Config, win []int32) (float64, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil || len(files) == 0 {
		return 0, fmt.Errorf("no shard files in %s (%v)", dir, err)
	}
	sort.Strings(files)
	byName := map[string][]float32{}
	for _, f := range files {
		ts, _, err := model.ReadSafetensorsFile(f)
		if err != nil {
			return 0, err
		}
		for _, t := range ts {
			byName[t.Name] = t.Data
		}
	}
	p, err := model.NewPipeline(m, 1, model.HeadFirst)
	if err != nil {
		return 0, err
	}
	for _, t := range p.Params() {
		w, ok := byName[t.Name]
		if !ok || len(w) != len(t.W) {
			return 0, fmt.Errorf("%s: parameter %s missing or of the wrong size", dir, t.Name)
		}
		copy(t.W, w)
	}
	return train.ValLoss(p, win, p.Cfg.Ctx, nil)
}
