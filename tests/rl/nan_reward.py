"""A user reward that fails on purpose: NaN for responses with a 'z', an exception for 'oo'."""


def score(prompt, response, sample):
    if "z" in response:
        return float("nan")
    if "oo" in response:
        raise ValueError("no double o")
    return 1.0
