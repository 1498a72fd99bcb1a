"""Independent reference statistics: plain Python loops over one prompt's attention pattern.

Written separately from headscope.capture.reducers on purpose (no shared code, no vectorisation),
so a bug in the vectorised reducers cannot hide in both.
"""

import math


def reference_stats(pattern, tokens):
    """pattern: nested lists / tensor [layer][head][q][k] of one unpadded prompt; tokens: list[int].

    Returns {stat name: [layer][head] float or nan}.
    """
    n_layers, n_heads, T = len(pattern), len(pattern[0]), len(tokens)
    names = [
        "first_token_mass",
        "attention_entropy",
        "mean_attention_distance",
        "previous_token_score",
        "duplicate_token_score",
        "induction_score",
    ]
    out = {n: [[math.nan] * n_heads for _ in range(n_layers)] for n in names}
    for layer in range(n_layers):
        for head in range(n_heads):
            A = pattern[layer][head]
            sink = ent = dist = prev = 0.0
            dup = ind = 0.0
            n_dup_q = 0
            for i in range(1, T):
                row = [float(A[i][j]) for j in range(T)]
                sink += row[0]
                ent += -sum(a * math.log(a) for a in row[: i + 1] if a > 0)
                dist += sum(row[j] * (i - j) for j in range(i + 1))
                prev += row[i - 1]
            for i in range(T):
                copies = [j for j in range(i) if tokens[j] == tokens[i]]
                if copies:
                    n_dup_q += 1
                    dup += sum(float(A[i][j]) for j in copies)
                    ind += sum(float(A[i][j + 1]) for j in copies)
            if T > 1:
                out["first_token_mass"][layer][head] = sink / (T - 1)
                out["attention_entropy"][layer][head] = ent / (T - 1)
                out["mean_attention_distance"][layer][head] = dist / (T - 1)
                out["previous_token_score"][layer][head] = prev / (T - 1)
            if n_dup_q:
                out["duplicate_token_score"][layer][head] = dup / n_dup_q
                out["induction_score"][layer][head] = ind / n_dup_q
    return out
