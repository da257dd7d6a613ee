"""Helpers shared by test modules: tiny models from configs, saved combiners, inputs, spec builders."""
