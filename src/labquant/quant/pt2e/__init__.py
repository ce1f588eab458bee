"""`backend=pt2e`: torch.export + torchao's PT2E quantization (prepare_pt2e / convert_pt2e).

Every torchao call in labquant lives in this package, as every torch.ao call lives in eager/.
"""
