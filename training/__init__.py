"""Training with Lightning: ``vit-train`` (:mod:`training.cli`), the image classifier
(:mod:`training.classifier`), ImageFolder data (:mod:`training.image_data`,
:mod:`training.data`, :mod:`training.augment`) and optimizer groups (:mod:`training.optim`)."""
