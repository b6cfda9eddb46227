package presets

import "strings"

// didYouMean is ", did you mean X?" for the candidate closest to name, when one is close enough
// to be a typo (an edit distance of at most a quarter of its length, and at least 2), else "".
func didYouMean(name string, candidates []string) string {
	// The distance costs len(name)×len(candidate) per candidate: a name longer than any preset or
	// SKU is no typo of one, and a 256 KiB name must not cost a submit seconds of CPU.
	if len(name) > maxSuggestLen {
		return ""
	}
	best, bestDist := "", -1
	for _, c := range candidates {
		d := editDistance(strings.ToLower(name), strings.ToLower(c))
		if bestDist < 0 || d < bestDist {
			best, bestDist = c, d
		}
	}
	if bestDist < 0 || bestDist > max(2, len(best)/4) {
		return ""
	}
	return ", did you mean " + best + "?"
}

// maxSuggestLen is the longest name a suggestion is computed for.
const maxSuggestLen = 128

// editDistance is the Levenshtein distance between a and b (bytes: names are ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
