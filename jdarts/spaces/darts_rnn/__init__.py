"""The DARTS recurrent search space (paper sec. 2.1, A.1.2), for language models on PTB.

The space itself (search cell, supernet, derivation, `SPACES` registration)
lands here later. For now the package holds what exists of it: the
recurrent genotype type and the published recurrent cells
(`jdarts.spaces.darts_rnn.genotypes`).
"""
