package tftp

// BlockSizeCap and UpMTUs are for tests.
var (
	BlockSizeCap = blockSizeCap
	UpMTUs       = upMTUs
)
