"""Example user reward functions for `type: function` rewards: ``function(prompt, response, sample) -> float``.

Used by examples/configs/grpo_tiny_cpu.yaml and ppo_tiny_cpu.yaml on the bundled tiny RL prompts."""


def vowel_share(prompt: str, response: str, sample: dict) -> float:
    """The share of the response's letters that are vowels (0 for a response without letters)."""
    letters = [c for c in response.lower() if c.isalpha()]
    if not letters:
        return 0.0
    return sum(c in "aeiou" for c in letters) / len(letters)
