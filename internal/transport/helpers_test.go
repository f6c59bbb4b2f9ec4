package transport

import "math"

func nanBits() float64         { return math.NaN() }
func f32bits(f float32) uint32 { return math.Float32bits(f) }
