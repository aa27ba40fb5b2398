"""The resident node agent: node_agent.py / node_attempts.py run on nodes; session.py and sessions.py
are the controller side (see README "Resident agent")."""
