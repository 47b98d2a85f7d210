"""The evaluation tasks, one file each; :data:`ropelab.eval.TASKS` names them."""
