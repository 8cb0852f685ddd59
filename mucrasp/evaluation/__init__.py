"""Quality of a pruned model against its dense original: answer accuracy, CoT KL, perplexity, agreement."""
