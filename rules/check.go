package rules

// Check says whether a name is blocked by the lists, and by which entry:
// the first list (in order) that lists it, and the line it was first seen
// on. Matching is exact and case-insensitive, as in the kernel.
func Check(lists []*List, name string) (src Source, blocked bool, err error) {
	n, err := NormalizeName(name)
	if err != nil {
		return Source{}, false, &InputError{Err: err}
	}
	for _, l := range lists {
		if _, ok := l.Names[n]; ok && l.Allow {
			return Source{}, false, nil // allow beats block
		}
	}
	for _, l := range lists {
		if line, ok := l.Names[n]; ok {
			return Source{File: l.Path, Line: line}, true, nil
		}
	}
	return Source{}, false, nil
}
