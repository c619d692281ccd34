"""Spend control, pure: budgets and their periods, holds, actions and forecasts."""
