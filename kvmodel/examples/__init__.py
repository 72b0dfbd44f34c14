"""kvmodel's example applications, installed as the ``kvmodel_examples`` package."""
