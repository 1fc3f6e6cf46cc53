-- Each base model's architecture, from its published config.json (the
-- Hugging Face repositories that trainers/hf/hub.json pins): the shapes the
-- memory model (package memory) estimates a job's GPU memory from, by
-- method, QLoRA and pool. They replace min_gpu_memory_gb, one figure that
-- could say nothing of QLoRA, DPO, the sequence length or how many GPUs a
-- pool shards the model over. A model added to the catalog must give them.
ALTER TABLE base_models
    ADD COLUMN layers            integer CHECK (layers > 0),
    ADD COLUMN hidden_size       integer CHECK (hidden_size > 0),
    ADD COLUMN intermediate_size integer CHECK (intermediate_size > 0),
    ADD COLUMN attention_heads   integer CHECK (attention_heads > 0),
    ADD COLUMN kv_heads          integer CHECK (kv_heads > 0),
    ADD COLUMN head_dim          integer CHECK (head_dim > 0),
    ADD COLUMN vocab_size        integer CHECK (vocab_size > 0);

-- num_hidden_layers, hidden_size, intermediate_size, num_attention_heads,
-- num_key_value_heads, head_dim and vocab_size of Llama-3.1-8B-Instruct,
-- Llama-3.1-70B-Instruct and Mistral-7B-Instruct-v0.3.
UPDATE base_models SET layers = 32, hidden_size = 4096, intermediate_size = 14336, attention_heads = 32, kv_heads = 8, head_dim = 128, vocab_size = 128256
    WHERE id = 'llama-3.1-8b';
UPDATE base_models SET layers = 80, hidden_size = 8192, intermediate_size = 28672, attention_heads = 64, kv_heads = 8, head_dim = 128, vocab_size = 128256
    WHERE id = 'llama-3.1-70b';
UPDATE base_models SET layers = 32, hidden_size = 4096, intermediate_size = 14336, attention_heads = 32, kv_heads = 8, head_dim = 128, vocab_size = 32768
    WHERE id = 'mistral-7b-v0.3';

ALTER TABLE base_models
    ALTER COLUMN layers SET NOT NULL,
    ALTER COLUMN hidden_size SET NOT NULL,
    ALTER COLUMN intermediate_size SET NOT NULL,
    ALTER COLUMN attention_heads SET NOT NULL,
    ALTER COLUMN kv_heads SET NOT NULL,
    ALTER COLUMN head_dim SET NOT NULL,
    ALTER COLUMN vocab_size SET NOT NULL,
    DROP COLUMN min_gpu_memory_gb;
