"""Operations around the model zoo: data, training, evaluation metrics, MC prediction, plots."""
