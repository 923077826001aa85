"""VCP-CLIP: visual context prompting (pre-VCP image-conditioned prompts, post-VCP text refinement)."""
