"""DreamBooth's quality metrics (Ruiz et al. 2022, arXiv 2208.12242, Tables 1 and 3), computed from
image/text features: subject fidelity (DINO, CLIP-I), prompt fidelity (CLIP-T), PRES and DIV."""
