// Package skippiperef imports the schedule files the SkipPipe authors'
// scheduler writes (the published one sits in ../shared/reference beside
// the module; its format is that directory's README.md): Parse reads and
// checks a file, File.Config gives its cluster as a skippipe.Config, and
// File.Plan and BaselinePlan turn the authors' plans into Plans, so that
// `stagecoach sim --import-skippipe` simulates them beside Stagecoach's.
package skippiperef
