"""Reward models: HelpSteer2-Preference (BT family, regression, ExPO) and ArmoRM (multi-objective + MoE gating)."""
