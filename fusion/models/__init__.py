"""Detection model: encoders -> BEV -> shared trunk -> heterogeneous graph fusion -> CenterPoint head.

Plain `nn.Module`s composed by constructor injection; `model.build_model` is the only place the parts meet.
"""
